"""The entmtp command line, installed as the package `entmtp_cli`."""
