"""Tree JSON files shipped with entmtp (format entmtp-tree/1); load them with entmtp.trees.files.load_tree."""
