from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from sessions.models import ApiToken


class Command(BaseCommand):
    help = "Create an API token for a user and print it on the last line."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="What the token is for")

    def handle(self, *args, **options):
        user = get_user_model().objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"No user named {options['username']!r}")
        token, raw = ApiToken.issue(user, options["name"])
        self.stdout.write(
            f"Created token {token.prefix}... for {user.username}; "
            "it is shown only once:"
        )
        return raw
