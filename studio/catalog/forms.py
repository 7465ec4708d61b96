from django import forms


class HubModelForm(forms.Form):
    repo_id = forms.CharField(label="Hub repo", max_length=200,
                              widget=forms.TextInput(attrs={"placeholder": "Qwen/Qwen2.5-0.5B-Instruct"}))
    revision = forms.CharField(label="Revision", max_length=100, required=False,
                               help_text="A branch, tag or commit; main when empty.")
    secret = forms.TypedChoiceField(label="Saved access token", required=False, coerce=int, empty_value=None,
                                    choices=[("", "none")])
    token = forms.CharField(label="…or a new access token", required=False, max_length=400,
                            widget=forms.PasswordInput(render_value=False),
                            help_text="For gated or private repos. Kept encrypted as a team secret; never shown again.")
    allow_pickle = forms.BooleanField(label="Allow pickled weights (.bin)", required=False,
                                      help_text="Staff only: pickles can run code when loaded.")

    def __init__(self, *args, secrets=(), staff: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["secret"].choices = [("", "none"), *((s.pk, str(s)) for s in secrets)]
        if not staff:
            del self.fields["allow_pickle"]


class FolderModelForm(forms.Form):
    path = forms.CharField(label="Folder on the server", max_length=1000,
                           widget=forms.TextInput(attrs={"placeholder": "/models/my-llama"}))
