"""`python -m gateway.cli`, as `dvp-gateway`."""

from gateway.cli import main

if __name__ == "__main__":  # not when a --workers process imports this as __mp_main__
    main()
