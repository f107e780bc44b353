"""`python -m services.lots`: run the lots service until SIGTERM."""

from services.lots.bootstrap import start
from shared.config import settings_for
from shared.logs import configure_logging
from shared.runtime import run_until_signal


def main() -> None:
    settings = settings_for("lots")
    configure_logging("lots", settings.log_level)
    run_until_signal(lambda: start(settings))


if __name__ == "__main__":
    main()
