from django import forms
from django.contrib.auth.forms import UserCreationForm
from django.contrib.auth.models import User


class SignupForm(UserCreationForm):
    email = forms.EmailField(required=True, help_text="For account recovery; never shared.")

    class Meta(UserCreationForm.Meta):
        model = User
        fields = ("username", "email")

    def clean_email(self):
        # Never "already registered": that would tell anyone which addresses have accounts
        # (accounts.services.sign_up handles a known address instead).
        return self.cleaned_data["email"].strip()
