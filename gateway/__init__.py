"""dvp-gateway: cross-chain delivery-versus-payment with HTLCs and a relayer."""

__version__ = "0.1.0"
