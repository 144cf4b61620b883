from django.urls import path
from djapp import views

urlpatterns = [
    path("rows/enqueue", views.enqueue),
    path("rows", views.rows),
]
