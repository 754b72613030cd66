"""Defaults that the package and the command line's --help both state, kept in one
torch-free place so help text reads them instead of repeating them."""

# Draft heads: Medusa, grounded Hydra, and Hydra++ ("hydrapp": Hydra behind a prefix decoder layer).
HEAD_KINDS = ("medusa", "hydra", "hydrapp")
METHODS = ("ar",) + HEAD_KINDS + ("entmtp",)
DEFAULT_TASK = "sharegpt"       # whose shipped bank `--method entmtp` uses without --bank
DEFAULT_TREE = "mc_sim_7b_63"   # medusa/hydra without --tree
DEFAULT_HEAD_KIND = "hydra"     # entmtp without --bank: whose shipped bank
