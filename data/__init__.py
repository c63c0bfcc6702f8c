"""Data: the synthetic shapes world, webdataset shards, DataModules and the attribute judge."""
