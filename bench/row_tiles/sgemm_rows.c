#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
static float rnd(void){return (float)rand()/RAND_MAX-0.5f;}
int main(int argc,char**argv){
  int K=atoi(argv[1]), N=atoi(argv[2]), R=atoi(argv[3]);
  int MM=1200;
  float *A=calloc((size_t)(MM+128)*K,4),*W=malloc(sizeof(float)*N*K),*C=malloc(sizeof(float)*(MM+128)*N),*ref=malloc(sizeof(float)*MM*N);
  for(long i=0;i<(long)(MM+128)*K;i++)A[i]=rnd(); for(long i=0;i<(long)N*K;i++)W[i]=rnd()*0.1f;
  openblas_set_num_threads(1);
  for(int t=0;t<MM;t+=R) cblas_sgemm(CblasRowMajor,CblasNoTrans,CblasTrans,R,N,K,1,A+(long)t*K,K,W,K,0,ref+(long)t*N,N);
  int badraw[3]={0},badpad[3]={0},badtile[3]={0};
  for(int th=1;th<=2;th++){ openblas_set_num_threads(th);
  for(int M=1;M<=MM-R;M+= (M<70?1:37)){ int off=(M*7)%64;
      cblas_sgemm(CblasRowMajor,CblasNoTrans,CblasTrans,M,N,K,1,A+(long)off*K,K,W,K,0,C,N);
      for(int r=0;r<M;r++) if(memcmp(C+(long)r*N, ref+(long)(off+r)*N, sizeof(float)*N)) {badraw[th]++;break;}
      int Mp=(M+R-1)/R*R;
      cblas_sgemm(CblasRowMajor,CblasNoTrans,CblasTrans,Mp,N,K,1,A+(long)off*K,K,W,K,0,C,N);
      for(int r=0;r<M;r++) if(memcmp(C+(long)r*N, ref+(long)(off+r)*N, sizeof(float)*N)) {badpad[th]++;break;}
      for(int t=0;t<M;t+=R) cblas_sgemm(CblasRowMajor,CblasNoTrans,CblasTrans,R,N,K,1,A+(long)(off+t)*K,K,W,K,0,C+(long)t*N,N);
      for(int r=0;r<M;r++) if(memcmp(C+(long)r*N, ref+(long)(off+r)*N, sizeof(float)*N)) {badtile[th]++;break;}
  }}
  printf("K=%d N=%d R=%d  M-values differing (th1/th2): raw %d/%d padded %d/%d tiles %d/%d\n",K,N,R,badraw[1],badraw[2],badpad[1],badpad[2],badtile[1],badtile[2]);
  return 0;}
