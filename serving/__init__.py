"""The online scorer: a user's stored state from the online store + score_groups."""
