"""`manage.py pacsconfig export [FILE]` / `import FILE`: the admin settings and
the peer list as one JSON document (the logic is in pacs_site.config_io)."""

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from pacs_site.config_io import ConfigError, dumps, export_config, import_config


class Command(BaseCommand):
    help = "Export or import the DICOM server settings and the peer list as one JSON document."

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True)
        export = actions.add_parser("export", help="write the configuration as JSON (to stdout without FILE)")
        export.add_argument("file", nargs="?", help="JSON file to write")
        imp = actions.add_parser("import", help="validate a JSON document, then apply all of it or nothing")
        imp.add_argument("file", help="JSON file to read")

    def handle(self, *args, action, file=None, **options):
        if action == "export":
            return self._export(file)
        return self._import(file)

    def _export(self, file):
        text = dumps(export_config())
        if file is None:
            self.stdout.write(text, ending="")
            return
        try:
            Path(file).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"cannot write {file}: {exc.strerror or exc}") from None
        self.stdout.write(f"configuration written to {file}")

    def _import(self, file):
        try:
            document = json.loads(Path(file).read_text(encoding="utf-8"))
        except OSError as exc:
            raise CommandError(f"cannot read {file}: {exc.strerror or exc}") from None
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            raise CommandError(f"{file} is not a JSON document: {exc}") from None
        try:
            summary = import_config(document)
        except ConfigError as exc:
            raise CommandError(
                f"{file}: {len(exc.problems)} problem(s), nothing changed:\n" + "\n".join(exc.problems)
            ) from None
        for line in summary:
            self.stdout.write(line)
