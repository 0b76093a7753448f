"""The development chains' ids: constants only, so configuration can name them without
loading the chain libraries."""

DEFAULT_PAYMENT_CHAIN_ID = 71_001
DEFAULT_BUSINESS_CHAIN_ID = 71_002
