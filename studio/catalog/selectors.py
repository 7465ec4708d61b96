from studio.catalog.models import BaseModel
from tuning.methods import METHODS


def base_model_list():
    return BaseModel.objects.all()


def method_list():
    return list(METHODS.values())
