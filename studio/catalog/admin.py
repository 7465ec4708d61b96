from django.contrib import admin

from studio.catalog.models import BaseModel


@admin.register(BaseModel)
class BaseModelAdmin(admin.ModelAdmin):
    list_display = ("name", "source", "ref")
