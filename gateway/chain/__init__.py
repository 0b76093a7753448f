"""Chain access: the only package that imports web3 and the EVM libraries."""
