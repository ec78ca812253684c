"""The lake: Arrow schemas, Parquet writers and readers, the DuckDB catalog (issue 3)."""
