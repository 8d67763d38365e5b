"""The home page: what each page teaches and needs, where models run, and what the model cache holds."""
