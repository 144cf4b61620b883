from django.db import models


class Row(models.Model):
    n = models.IntegerField(unique=True)
    pid = models.IntegerField()
