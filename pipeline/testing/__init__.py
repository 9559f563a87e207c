"""Development helpers (a local S3 endpoint); not used by production runs."""
