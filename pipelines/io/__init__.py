"""Storage and the output tables: URIs and filesystems, the Parquet writers and readers, RLE, the output
lock and run records."""
