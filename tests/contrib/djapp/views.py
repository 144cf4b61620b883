from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from djapp.jobs import WriteRow
from djapp.models import Row


@csrf_exempt
def enqueue(request):
    count = int(request.POST["count"])
    jids = WriteRow.enqueue_bulk([[n] for n in range(count)])
    return JsonResponse({"enqueued": len(jids)})


def rows(request):
    return JsonResponse({"count": Row.objects.count(),
                         "distinct": Row.objects.values("n").distinct().count()})
