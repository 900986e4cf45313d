import socket, time, sys
PORT=int(sys.argv[1]); N=int(sys.argv[2])
body=b'{"vertical":"auto_insurance","lead":{"state":"TX","zip":"76001","age":40,"homeowner":true,"credit":"good","insured":true,"vehicle_year":2020}}'
def req(key):
    return (b"POST /v1/ping HTTP/1.1\r\nhost: x\r\nauthorization: Bearer "+key+b"\r\ncontent-type: application/json\r\ncontent-length: "+str(len(body)).encode()+b"\r\n\r\n"+body)
held=[]
for i in range(N):
    s=socket.create_connection(("127.0.0.1",PORT)); s.settimeout(3)
    s.sendall(req(b"demo-seller-key")); d=s.recv(65536)
    if not d.startswith(b"HTTP/1.1 200"): print("held", i, d[:40]); break
    held.append(s)
print("held idle:", len(held))
t=time.monotonic()
s=socket.create_connection(("127.0.0.1",PORT)); s.settimeout(70)
s.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
d=s.recv(1000)
print("new connection answered after %.2f s:"%(time.monotonic()-t), d[:15])
closed=0
for h in held:
    h.settimeout(0.01)
    try:
        if h.recv(10)==b"": closed+=1
    except Exception: pass
print("idle connections closed for it:", closed)
