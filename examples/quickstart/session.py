# The quickstart's "python shell" session, line by line (plus the waits a script needs).
import time

from tasks import add

result = add.delay(3, 4)
print(">>> add.delay(3, 4)")
print(result)
result.get(timeout=10)  # in a shell you would simply wait a moment
print(">>> _.result")
print(result.result)
print(">>> r = add.apply_async(args=(3, 4))")
r = add.apply_async(args=(3, 4))
print(">>> r.get(timeout=10)")
print(r.get(timeout=10))
print(">>> add(3, 4)")
print(add(3, 4))
print(">>> add.apply_async(args=(3, 4), countdown=10)")
sent = time.monotonic()
delayed = add.apply_async(args=(3, 4), countdown=10)
print(delayed)
print(f"{delayed.get(timeout=30)}  (after {time.monotonic() - sent:.2f} s, held by the broker, not the worker)")
