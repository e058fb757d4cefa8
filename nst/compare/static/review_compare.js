(function(){
var pair=null,busy=false,z={s:1,x:0,y:0},drag=null;
var imgs=[document.querySelector('#left img'),document.querySelector('#right img')];
var status=document.getElementById('status'),form=document.getElementById('name-form');
function name(){return localStorage.getItem('nst-reviewer')||'';}
function showName(){document.getElementById('who').textContent=name()?'reviewer: '+name():'';
 form.hidden=!!name();if(!name())document.getElementById('reviewer').focus();}
form.addEventListener('submit',function(e){e.preventDefault();var v=document.getElementById('reviewer').value.trim();
 if(v){localStorage.setItem('nst-reviewer',v);showName();}});
document.getElementById('rename').addEventListener('click',function(e){e.preventDefault();
 localStorage.removeItem('nst-reviewer');showName();});
function apply(){imgs.forEach(function(i){i.style.transform='translate('+z.x+'px,'+z.y+'px) scale('+z.s+')';});}
function zoom(f,px,py){var s=Math.min(8,Math.max(1,z.s*f));z.x=px-(px-z.x)*s/z.s;z.y=py-(py-z.y)*s/z.s;z.s=s;
 if(s===1){z.x=0;z.y=0;}apply();}
function centre(){var r=imgs[0].parentNode.getBoundingClientRect();return [r.width/2,r.height/2];}
document.querySelectorAll('.frame').forEach(function(f){
 f.addEventListener('wheel',function(e){e.preventDefault();var r=f.getBoundingClientRect();
  zoom(e.deltaY<0?1.25:0.8,e.clientX-r.left,e.clientY-r.top);},{passive:false});
 f.addEventListener('mousedown',function(e){drag={x:e.clientX-z.x,y:e.clientY-z.y};});});
window.addEventListener('mousemove',function(e){if(drag){z.x=e.clientX-drag.x;z.y=e.clientY-drag.y;apply();}});
window.addEventListener('mouseup',function(){drag=null;});
function setBusy(b){busy=b;document.querySelectorAll('button[data-answer]').forEach(function(x){x.disabled=b;});}
function next(){setBusy(true);return fetch('api/pair').then(function(r){return r.json();}).then(function(p){
 pair=p;imgs[0].src='image/'+p.left+'/result';imgs[1].src='image/'+p.right+'/result';
 document.getElementById('content').src='image/'+p.left+'/content';document.getElementById('style').src='image/'+p.left+'/style';
 document.body.dataset.pair=p.id;z={s:1,x:0,y:0};apply();setBusy(false);});}
function judge(answer){
 if(!pair||busy)return;if(!name()){showName();status.textContent='Enter your name first.';return;}
 setBusy(true);
 var body={id:pair.id,left:pair.left,right:pair.right,answer:answer,reviewer:name()};
 fetch('api/judgements',{method:'POST',headers:{'Content-Type':'application/json'},body:JSON.stringify(body)})
 .then(function(r){return r.json().then(function(d){return [r.ok,d];});}).then(function(res){
  var d=res[1];if(!res[0]){status.textContent='Not recorded: '+d.error;
   if(d.kept)return next();setBusy(false);return;}
  document.body.dataset.count=d.count;document.body.dataset.skipped=d.skipped;
  document.getElementById('count').textContent=d.count+' judgements'+(d.skipped?' · '+d.skipped+' skipped':'');
  var said={left:'judgement '+d.count+' kept, you preferred its left one',right:'judgement '+d.count+' kept, you preferred its right one',
   tie:'judgement '+d.count+' kept, a tie',skip:'skipped, not counted as a judgement'}[answer];
  status.textContent='Previous pair ('+said+'): its left was '+d.left+', its right '+d.right+'. A new pair is shown above.';
  return next();
 }).catch(function(e){status.textContent='Not recorded: '+e;setBusy(false);});}
document.querySelectorAll('button[data-answer]').forEach(function(b){
 b.addEventListener('click',function(){judge(b.dataset.answer);});});
document.addEventListener('keydown',function(e){
 if(e.target.tagName==='INPUT'||e.ctrlKey||e.metaKey||e.altKey)return;
 var a={ArrowLeft:'left',ArrowRight:'right','=':'tie',s:'skip',S:'skip'}[e.key];
 if(a){e.preventDefault();judge(a);return;}
 var c=centre();if(e.key==='+')zoom(1.25,c[0],c[1]);else if(e.key==='-')zoom(0.8,c[0],c[1]);
 else if(e.key==='0'){z={s:1,x:0,y:0};apply();}});
showName();next();
})();
