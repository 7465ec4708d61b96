"""Add a base model that every team can fine-tune: a local directory or a hub id."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from studio.catalog.services import base_model_register


class Command(BaseCommand):
    help = "Register a base model (local directory with safetensors weights, or a hub id)."

    def add_arguments(self, parser):
        parser.add_argument("name", help="Name shown in the UI")
        parser.add_argument("ref", help="Local directory or hub id (e.g. HuggingFaceTB/SmolLM2-135M-Instruct)")

    def handle(self, *args, name, ref, **options):
        path = Path(ref).expanduser()
        if path.exists():
            if not any(path.glob("*.safetensors")):
                raise CommandError(f"{path} has no .safetensors weights; only safetensors are loaded")
            model = base_model_register(name=name, source="local", ref=str(path.resolve()))
        elif ref.startswith(("/", ".", "~")):
            raise CommandError(f"directory not found: {ref}")
        else:
            model = base_model_register(name=name, source="hub", ref=ref)
        self.stdout.write(f"Registered base model #{model.pk}: {model.name} ({model.source}: {model.ref})")
