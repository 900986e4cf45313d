import json,sys,glob,datetime
def ts(s): return datetime.datetime.fromisoformat(s.replace('Z','+00:00')).timestamp()
for d in sys.argv[1:]:
    recs=[]
    for f in sorted(glob.glob(d+'/ledger/*.jsonl')):
        for l in open(f):
            if '"type":"auction"' in l:
                r=json.loads(l); recs.append((ts(r['at']), r['took_us']))
    recs.sort()
    # legs: split at gaps > 1 s; drop each leg's first 2 s (warm-up)
    legs=[]; cur=[]
    for a,t in recs:
        if cur and a-cur[-1][0]>1.0: legs.append(cur); cur=[]
        cur.append((a,t))
    if cur: legs.append(cur)
    t=[]
    for leg in legs:
        s0=leg[0][0]
        t+= [x for a,x in leg if a>=s0+2.0]
    t.sort(); n=len(t)
    print('%-16s legs %d measured %6d  p50 %.2f p90 %.2f p99 %.2f p99.9 %.2f max %.2f'%((d,len(legs),n)+tuple(t[min(n-1,int(n*q))]/1000 for q in (0.5,0.9,0.99,0.999,1.0))))
