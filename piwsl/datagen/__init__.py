"""Reference-data generators: quantum-chemistry labels for piwsl's data formats."""
