"""Generated protobuf code; do not edit. See protos/."""
