"""Data in: study records, one reader per source (MURA folder, manifest, uploads), data roots and path safety."""
