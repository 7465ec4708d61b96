from studio.catalog.models import BaseModel


def base_model_register(*, name: str, source: str, ref: str) -> BaseModel:
    model, _ = BaseModel.objects.update_or_create(ref=ref, defaults={"name": name, "source": source})
    return model
