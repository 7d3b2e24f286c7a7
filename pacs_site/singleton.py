"""One-row settings models edited in the admin (shared by every app)."""

from django.contrib import admin
from django.db import models
from django.shortcuts import redirect


class SingletonModel(models.Model):
    """A settings table that always has exactly one row, pk=1."""

    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True

    def save(self, *args, **kwargs):
        self.pk = 1
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ValueError(f"{type(self).__name__} is a singleton and cannot be deleted")

    @classmethod
    def load(cls):
        """The row, created with the defaults on first use."""
        obj, _ = cls.objects.get_or_create(pk=1)
        return obj


class SingletonAdmin(admin.ModelAdmin):
    """The changelist goes straight to the one row; no add, no delete."""

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def changelist_view(self, request, extra_context=None):
        obj = self.model.load()
        return redirect(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", obj.pk)
