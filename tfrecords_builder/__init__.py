"""Databases (CASME II, SAMM, SMIC, the MEGC2019 crops, the seed release, a demo) -> TFRecords."""
