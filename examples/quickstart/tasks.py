# tasks.py — the Celery quickstart, on amqptasks.
from amqptasks import App

app = App("tasks")  # broker: AMQPTASKS_BROKER_URL, else amqp://guest:guest@localhost:5672/%2F


@app.task
def add(x, y):
    return x + y
