"""Weight quantization for split inference: W8A16 on the user side, FP8 on the item side."""
