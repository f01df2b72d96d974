"""Codecs the readers share: Snappy, CRC-32C, protobuf message tables, raw tensor bytes and
bounded HDF5 access."""
