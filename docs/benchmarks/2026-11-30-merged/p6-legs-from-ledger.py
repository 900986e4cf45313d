import json,glob,sys,statistics
def pct(a,p):
    a=sorted(a); return a[min(len(a)-1,int(len(a)*p))]
for d in sys.argv[1:]:
    recs=[]
    for f in sorted(glob.glob(f'{d}/ledger/seg-*.jsonl')):
        for line in open(f):
            if '"type":"auction"' not in line: continue
            r=json.loads(line)
            recs.append((r['at'],r['generation'],r['took_us']))
    recs.sort()
    out=[];b=[];s=[];sb=0;ss=0
    for k in range(0,len(recs),24000):
        L=recs[k:k+24000]
        gens=len(set(g for _,g,_ in L))
        tk=[t for *_,t in L][4000:]
        slow=sum(1 for t in tk if t>30000)
        kind='swap' if gens>3 else 'base'
        if kind=='swap': s.append(pct(tk,.99)); ss+=slow
        else: b.append(pct(tk,.99)); sb+=slow
        out.append(f"{kind}:{pct(tk,.99)/1000:.2f}/{slow}")
    rep=json.load(open(f'{d}/report.json'))['extra']['p6']
    print(d, ' '.join(out), '| internal p99 med base %.2f swap %.2f | >30ms base %d swap %d | outside d99 %+.3f' % (statistics.median(b)/1000, statistics.median(s)/1000, sb, ss, rep['p99_difference_us']/1000))
