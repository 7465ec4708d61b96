from django import forms


class PublishForm(forms.Form):
    repo_id = forms.CharField(label="Repository", max_length=200,
                              widget=forms.TextInput(attrs={"placeholder": "your-name/my-adapter"}),
                              help_text="owner/name: your user or an organisation; a name alone goes under the "
                                        "token's user. An existing repo gets a new commit.")
    private = forms.BooleanField(label="Private repository", required=False, initial=True,
                                 help_text="Applies when the repo is created; an existing repo keeps its visibility.")
    branch = forms.CharField(label="Branch", max_length=100, required=False, initial="main",
                             help_text="main, or a new branch made from main's head.")
    commit_message = forms.CharField(label="Commit message", max_length=200, required=False)
    secret = forms.TypedChoiceField(label="Saved access token", required=False, coerce=int, empty_value=None,
                                    choices=[("", "none")])
    token = forms.CharField(label="…or a new access token", required=False, max_length=400,
                            widget=forms.PasswordInput(render_value=False),
                            help_text="With write access. Kept encrypted as a team secret; never shown again.")

    def __init__(self, *args, secrets=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["secret"].choices = [("", "none"), *((s.pk, str(s)) for s in secrets)]
