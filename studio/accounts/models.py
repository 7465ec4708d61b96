"""Teams own datasets, jobs and artifacts; users belong to teams with a role."""

from django.conf import settings
from django.db import models
from django.db.models.functions import Lower

DEFAULT_TEAM_SLUG = "default"


class Team(models.Model):
    name = models.CharField(max_length=100)
    slug = models.SlugField(unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return self.name


class Membership(models.Model):
    class Role(models.TextChoices):
        VIEWER = "viewer"
        MEMBER = "member"
        ADMIN = "admin"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    # The team the user's new work goes to, picked in the header (one per user at most).
    is_current = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "team"], name="one_membership_per_team")]

    def __str__(self):
        return f"{self.user} in {self.team} ({self.role})"


class ApiToken(models.Model):
    """A personal token for the JSON API. Only a sha256 of the whole token
    is stored: the token itself is shown once, at creation. ``prefix`` is a
    random public part that finds the row (and names the token in lists)
    without storing anything a thief could use."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    # A token tied to a team acts only there; without one, in all the user's teams.
    team = models.ForeignKey(Team, on_delete=models.CASCADE, null=True, blank=True, related_name="api_tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True)
    hashed_secret = models.CharField(max_length=64, help_text="sha256 hex of the whole token.")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self):
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class TeamSecret(models.Model):
    """A credential the team's jobs use (a hub access token …). The value is
    stored encrypted (``studio.accounts.secrets``), never shown back and never
    logged; a worker decrypts it for the job that names it."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="secrets")
    name = models.CharField(max_length=100)
    ciphertext = models.TextField()
    hint = models.CharField(max_length=12, blank=True, help_text="The last characters, to tell tokens apart.")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name", "pk"]

    def __str__(self):
        return f"{self.name} (…{self.hint})" if self.hint else self.name


class Invitation(models.Model):
    """A single-use link into a team, with the role it gives, until it expires.
    Only a sha256 of the link's token is stored (the link is shown once);
    ``email``, when given, is where the link was sent."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="invitations")
    role = models.CharField(max_length=10, choices=Membership.Role.choices, default=Membership.Role.MEMBER)
    email = models.EmailField(blank=True)
    hashed_token = models.CharField(max_length=64, unique=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    accepted_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                    related_name="+")
    accepted_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self):
        return f"invitation to {self.team} as {self.role}" + (f" for {self.email}" if self.email else "")


class VerifiedEmail(models.Model):
    """An address the user has shown to be theirs: they joined through an invitation link sent there, or
    the identity provider vouched for it (``email_verified``), or a site admin entered it here. Only these
    addresses match invitations and identity-provider sign-ins to an existing account: ``User.email`` is
    whatever was typed on a form."""

    class How(models.TextChoices):
        INVITATION = "invitation", "joined through a link sent there"
        IDENTITY_PROVIDER = "identity provider", "the identity provider vouched for it"
        ADMIN = "admin", "entered by a site admin"

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="verified_email")
    email = models.EmailField()
    how = models.CharField(max_length=20, choices=How.choices, default=How.ADMIN)
    verified_at = models.DateTimeField(auto_now=True)

    class Meta:
        # One account per address, however its letters are cased.
        constraints = [models.UniqueConstraint(Lower("email"), name="one_account_per_verified_email")]

    def __str__(self):
        return f"{self.email} ({self.how})"


class ExternalIdentity(models.Model):
    """The account a person at the identity provider signs in to: the provider's ``sub`` for them is
    stable where their e-mail address may change."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="external_identities")
    issuer = models.CharField(max_length=300)
    subject = models.CharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["issuer", "subject"], name="one_account_per_identity")]

    def __str__(self):
        return f"{self.subject} at {self.issuer}"
