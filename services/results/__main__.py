"""`python -m services.results`: run the results service until SIGTERM."""

from services.results.bootstrap import start
from shared.config import settings_for
from shared.logs import configure_logging
from shared.runtime import run_until_signal


def main() -> None:
    settings = settings_for("results")
    configure_logging("results", settings.log_level)
    run_until_signal(lambda: start(settings))


if __name__ == "__main__":
    main()
