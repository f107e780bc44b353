"""`python -m services.suppliers`: run the suppliers service until SIGTERM."""

from services.suppliers.bootstrap import start
from shared.runtime import run_service

if __name__ == "__main__":
    run_service("suppliers", start)
