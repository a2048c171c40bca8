"""L2 storage adapters: one module per kind (mock, fs, s3, dax) plus shared wrappers."""
