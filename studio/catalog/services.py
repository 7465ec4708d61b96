from studio.catalog.models import BaseModel


def base_model_register(*, name: str, source: str, ref: str, upstream_id: str = "") -> BaseModel:
    model, _ = BaseModel.objects.update_or_create(ref=ref, defaults={"name": name, "source": source,
                                                                     "upstream_id": upstream_id})
    return model
