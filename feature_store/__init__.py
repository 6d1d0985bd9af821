"""The Feast repository: entity, feature views and store config derived from the table contracts."""
