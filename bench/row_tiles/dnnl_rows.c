#include <oneapi/dnnl/dnnl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+1e-9*t.tv_nsec;}
static dnnl_engine_t eng; static dnnl_stream_t st;
static void run(int64_t M, int runtime, int64_t K, int64_t N, dnnl_format_tag_t wtag){
  dnnl_memory_desc_t a,b,c; dnnl_dims_t ad={runtime?DNNL_RUNTIME_DIM_VAL:M,K}, bd={K,N}, cd={runtime?DNNL_RUNTIME_DIM_VAL:M,N};
  dnnl_dims_t as={K,1}, bs={1,K}, cs={N,1};
  dnnl_memory_desc_init_by_strides(&a,2,ad,dnnl_u8,as);
  if (wtag==dnnl_format_tag_any) dnnl_memory_desc_init_by_tag(&b,2,bd,dnnl_s8,dnnl_format_tag_any); else dnnl_memory_desc_init_by_strides(&b,2,bd,dnnl_s8,bs);
  dnnl_memory_desc_init_by_strides(&c,2,cd,dnnl_s32,cs);
  dnnl_matmul_desc_t md; dnnl_matmul_desc_init(&md,&a,&b,NULL,&c);
  dnnl_primitive_desc_t pd; if(dnnl_primitive_desc_create(&pd,&md,NULL,eng,NULL)){printf("no pd\n");return;}
  const char*impl; dnnl_primitive_desc_query(pd,dnnl_query_impl_info_str,0,&impl);
  dnnl_primitive_t p; dnnl_primitive_create(&p,pd);
  const dnnl_memory_desc_t *wmd = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
  dnnl_memory_desc_t am=a, cm=c; if(runtime){dnnl_dims_t x={M,K},y={M,N}; dnnl_memory_desc_init_by_strides(&am,2,x,dnnl_u8,as); dnnl_memory_desc_init_by_strides(&cm,2,y,dnnl_s32,cs);}
  void *A=calloc(M*K,1),*B=calloc(dnnl_memory_desc_get_size(wmd),1),*C=calloc(M*N,4);
  dnnl_memory_t ma,mb,mc; dnnl_memory_create(&ma,&am,eng,A); dnnl_memory_create(&mb,wmd,eng,B); dnnl_memory_create(&mc,&cm,eng,C);
  dnnl_exec_arg_t args[3]={{DNNL_ARG_SRC,ma},{DNNL_ARG_WEIGHTS,mb},{DNNL_ARG_DST,mc}};
  dnnl_primitive_execute(p,st,3,args); dnnl_stream_wait(st);
  double best=1e9; for(int r=0;r<5;r++){double t=now(); dnnl_primitive_execute(p,st,3,args); dnnl_stream_wait(st); t=now()-t; if(t<best)best=t;}
  printf("M=%ld runtime=%d wtag=%s impl=%s: %.0f GOP/s\n",(long)M,runtime,wtag==dnnl_format_tag_any?"any":"plain",impl,2.0*M*K*N/best/1e9);
}
int main(){dnnl_engine_create(&eng,dnnl_cpu,0); dnnl_stream_create(&st,eng,dnnl_stream_default_flags);
 run(2560,1,1024,4096,dnnl_ab); run(2560,0,1024,4096,dnnl_ab); run(2560,0,1024,4096,dnnl_format_tag_any); run(256,0,1024,4096,dnnl_format_tag_any); run(256,0,1024,4096,dnnl_ab); run(32,0,1024,4096,dnnl_format_tag_any);}
