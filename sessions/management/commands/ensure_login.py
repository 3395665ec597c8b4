import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create a staff login for local use if no user exists, and print it."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")

    def handle(self, *args, **options):
        # The password is kept beside the database (git-ignored) so each start of
        # the dev stack can print it again; only its hash is in the database.
        saved = settings.BASE_DIR / "var" / "dev-login.txt"
        User = get_user_model()
        if User.objects.exists():
            if saved.exists():
                return saved.read_text().strip()
            return "A login already exists (manage.py changepassword to reset it)."
        password = secrets.token_urlsafe(12)
        User.objects.create_superuser(options["username"], "", password)
        line = f"Log in as {options['username']} with password {password}"
        saved.parent.mkdir(exist_ok=True)
        saved.write_text(line + "\n")
        saved.chmod(0o600)
        return line
