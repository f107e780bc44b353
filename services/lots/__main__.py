"""`python -m services.lots`: run the lots service until SIGTERM."""

from services.lots.bootstrap import start
from shared.runtime import run_service

if __name__ == "__main__":
    run_service("lots", start)
