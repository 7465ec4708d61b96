from django import forms


class DatasetUploadForm(forms.Form):
    file = forms.FileField(help_text="JSONL or CSV with instruction and output columns (alias: prompt/response).")
    name = forms.CharField(required=False, max_length=200, help_text="Optional; defaults to the file name.")
