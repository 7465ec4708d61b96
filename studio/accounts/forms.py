from django import forms

from studio.accounts.models import Membership
from studio.accounts.teams import MAX_INVITATION_DAYS


class InvitationForm(forms.Form):
    role = forms.ChoiceField(choices=Membership.Role.choices, initial=Membership.Role.MEMBER)
    email = forms.EmailField(required=False, help_text="Optional: the link is e-mailed there too.")
    days = forms.IntegerField(label="Valid for (days)", min_value=1, max_value=MAX_INVITATION_DAYS, initial=7)


class JoinForm(forms.Form):
    username = forms.CharField(max_length=150)
    email = forms.EmailField(required=False)
    password = forms.CharField(widget=forms.PasswordInput)
