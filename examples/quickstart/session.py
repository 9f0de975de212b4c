# The quickstart's "python shell" session, line by line.
from tasks import add

result = add.delay(3, 4)
print(">>> add.delay(3, 4)")
print(result)
print(">>> _.get(timeout=10)")
print(result.get(timeout=10))
print(">>> r = add.apply_async(args=(3, 4))")
r = add.apply_async(args=(3, 4))
print(">>> r.get(timeout=10)")
print(r.get(timeout=10))
print(">>> add(3, 4)")
print(add(3, 4))
