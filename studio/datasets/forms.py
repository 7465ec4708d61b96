from django import forms


class DatasetUploadForm(forms.Form):
    # Empty files reach the reader, whose message names the file and says what to do.
    file = forms.FileField(allow_empty_file=True, help_text="JSONL, CSV/TSV or plain text (.txt).")
    name = forms.CharField(required=False, max_length=200, help_text="Optional; defaults to the file name.")
