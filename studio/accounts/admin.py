from django.contrib import admin

from studio.accounts.models import ApiToken, Membership, Team, VerifiedEmail


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 1


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "created_at")
    inlines = [MembershipInline]


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Read-only apart from revoking: a token's secret cannot be seen or set here."""

    list_display = ("name", "user", "team", "prefix", "created_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    fields = ("name", "user", "team", "prefix", "created_at", "last_used_at", "revoked_at")
    readonly_fields = ("name", "user", "team", "prefix", "created_at", "last_used_at")

    def has_add_permission(self, request):
        return False  # tokens are made on the tokens page, where the secret is shown once


@admin.register(VerifiedEmail)
class VerifiedEmailAdmin(admin.ModelAdmin):
    """A site admin vouches for a user's address here: invitations to it then wait on that user's
    Invitations page, and an identity-provider sign-in with it reaches that account."""

    list_display = ("email", "user", "how", "verified_at")
    search_fields = ("email", "user__username")
