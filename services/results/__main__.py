"""`python -m services.results`: run the results service until SIGTERM."""

from services.results.bootstrap import start
from shared.runtime import run_service

if __name__ == "__main__":
    run_service("results", start)
