"""First-run set-up, safe to repeat: the first admin, the bundled base
model (converted once) and the sample dataset."""

import os
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand

from studio.accounts.services import admin_ensure, default_team
from studio.catalog.services import base_model_register
from studio.datasets.services import dataset_copy_sample
from tuning.errors import ModelError
from tuning.models import BUNDLED_MODEL_ID

SAMPLE_DATASET = Path(settings.BASE_DIR) / "samples" / "instructions-sample.jsonl"


class Command(BaseCommand):
    help = "Create the first admin, register the bundled model and the sample dataset."

    def add_arguments(self, parser):
        parser.add_argument("--skip-bundled-model", action="store_true",
                            help="Do not convert or register the bundled model (tests use tiny models).")

    def handle(self, *args, skip_bundled_model=False, **options):
        username = os.environ.get("STUDIO_ADMIN_USERNAME", "admin")
        admin, generated = admin_ensure(username=username, password=os.environ.get("STUDIO_ADMIN_PASSWORD"))
        if generated:
            self.stdout.write(self.style.WARNING(
                f"Created the admin account. Log in as {username} with password: {generated}\n"
                f"(shown only this once; change it in the admin pages)"))
        if not skip_bundled_model:
            self._bundled_model()
        sample = dataset_copy_sample(team=default_team(), user=admin, sample_path=SAMPLE_DATASET)
        self.stdout.write(f"Sample dataset: {sample.name} ({sample.row_count} rows)")

    def _bundled_model(self):
        from tuning.models import BUNDLED_ENCODER_ID, prepare_bundled_encoder, prepare_bundled_model

        # Under MEDIA_ROOT: the one directory every worker shares (a compose volume, NFS…).
        dest = Path(settings.MEDIA_ROOT) / "models" / "smollm2-135m-instruct"
        if not (dest / "model.safetensors").exists():
            self.stdout.write("Converting the bundled SmolLM2-135M-Instruct to safetensors (once, ~1 minute)…")
        try:
            prepare_bundled_model(dest)
        except ModelError as exc:
            self.stderr.write(f"Bundled model not available: {exc}")
            return
        base_model_register(name="SmolLM2-135M-Instruct (bundled)", source="bundled", ref=str(dest),
                            upstream_id=BUNDLED_MODEL_ID)
        self.stdout.write(f"Base model: {BUNDLED_MODEL_ID} at {dest}")
        encoder = prepare_bundled_encoder(Path(settings.MEDIA_ROOT) / "models" / "all-minilm-l6-v2")
        base_model_register(name="all-MiniLM-L6-v2 (bundled encoder, for classification)", source="bundled",
                            ref=str(encoder), upstream_id=BUNDLED_ENCODER_ID)
        self.stdout.write(f"Base model: {BUNDLED_ENCODER_ID} at {encoder}")
